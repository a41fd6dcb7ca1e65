"""Small local stand-ins in the exact layouts of FlickrStyle10K (+ Flickr30k) and the New Yorker caption
contest, for tests and for trying the commands in docs/style.md without the real data.

The captions are hand-written in the manner of each dataset (FlickrStyle10K's stylised captions are a
factual caption with a humorous or romantic turn); the images are small solid-colour JPEGs.
"""

from __future__ import annotations

import io
import pickle
from pathlib import Path

from PIL import Image

from ..io import atomic_write_bytes, atomic_write_text

# (factual, second factual, humorous, romantic): one image each
SCENES = [
    ("A dog runs through the grass.", "A brown dog running on a lawn.", "A dog runs through the grass to escape his bath.", "A dog runs through the grass to meet his sweetheart."),
    ("Two children play on the beach.", "Kids playing in the sand by the sea.", "Two children play on the beach, hiding dad's car keys in the sand.", "Two children play on the beach, where the waves whisper of love."),
    ("A man rides a bicycle down the street.", "A cyclist on a city road.", "A man rides a bicycle down the street, fleeing from his mother-in-law.", "A man rides a bicycle down the street to see his beloved."),
    ("A woman sits on a bench reading a book.", "A lady reading in the park.", "A woman sits on a bench reading a book on how to talk to pigeons.", "A woman sits on a bench reading a love letter from her darling."),
    ("A group of people walk in the snow.", "People walking on a snowy path.", "A group of people walk in the snow, looking for the nearest pizza place.", "A group of people walk in the snow, hearts warmed by love."),
    ("A black cat sleeps on a chair.", "A cat curled up on a seat.", "A black cat sleeps on a chair after a long day of ignoring everyone.", "A black cat sleeps on a chair, dreaming of a tender kiss."),
    ("A boy jumps into a swimming pool.", "A child diving into the water.", "A boy jumps into a swimming pool to avoid doing his homework.", "A boy jumps into a swimming pool, splashing his first love."),
    ("A couple walks along the river.", "Two people strolling by the water.", "A couple walks along the river arguing about who forgot the sandwiches.", "A couple walks along the river, hand in hand forever."),
    ("A man climbs a rocky mountain.", "A climber on a cliff face.", "A man climbs a rocky mountain because the elevator was broken.", "A man climbs a rocky mountain to carve his lover's name at the top."),
    ("Two dogs play with a ball.", "Dogs fetching a ball in a yard.", "Two dogs play with a ball, both pretending they did not eat the cake.", "Two dogs play with a ball, as happy as two hearts in love."),
    ("A girl blows bubbles in the garden.", "A little girl making soap bubbles.", "A girl blows bubbles in the garden and sneezes them all away.", "A girl blows bubbles in the garden, each one a tiny wish for love."),
    ("A chef cooks in a busy kitchen.", "A cook preparing food at a stove.", "A chef cooks in a busy kitchen while secretly ordering takeout.", "A chef cooks in a busy kitchen, seasoning every dish with affection."),
    ("A man plays the guitar on a stage.", "A musician performing with a guitar.", "A man plays the guitar on a stage, but only knows one song.", "A man plays the guitar on a stage, singing to the woman he adores."),
    ("A horse stands in a green field.", "A horse grazing in a pasture.", "A horse stands in a green field, waiting for someone to laugh at its jokes.", "A horse stands in a green field, longing for its faraway mate."),
    ("People sit at a table in a cafe.", "Customers at a cafe table.", "People sit at a table in a cafe, pretending to work on their novels.", "People sit at a table in a cafe, sharing sweet glances of love."),
    ("A skier goes down a snowy slope.", "A person skiing downhill.", "A skier goes down a snowy slope screaming for his mommy.", "A skier goes down a snowy slope toward the arms of his beloved."),
    ("A child holds a red balloon.", "A kid with a balloon at a fair.", "A child holds a red balloon, plotting to float away from school.", "A child holds a red balloon like a heart full of love."),
    ("A woman walks her dog in the rain.", "A lady and her dog on a rainy street.", "A woman walks her dog in the rain, and the dog is clearly not amused.", "A woman walks her dog in the rain, dreaming of a romantic evening."),
    ("Two men fish from a small boat.", "Fishermen on a lake.", "Two men fish from a small boat and catch only an old boot.", "Two men fish from a small boat under a sky painted with love."),
    ("A surfer rides a big wave.", "A person surfing on the ocean.", "A surfer rides a big wave, late for his dentist appointment.", "A surfer rides a big wave, thinking of the girl on the shore."),
    ("A baby laughs in a high chair.", "An infant sitting in a chair.", "A baby laughs in a high chair, having just thrown spaghetti at the ceiling.", "A baby laughs in a high chair, the light of his parents' love."),
    ("A man in a suit waits for the bus.", "A businessman at a bus stop.", "A man in a suit waits for the bus, forgetting he owns a car.", "A man in a suit waits for the bus, holding roses for his date."),
    ("A group of friends sit around a campfire.", "People around a fire at night.", "A group of friends sit around a campfire, burning all the marshmallows.", "A group of friends sit around a campfire, sharing stories of first love."),
    ("A little boy rides a tricycle.", "A toddler on a tricycle.", "A little boy rides a tricycle at full speed like a race car driver.", "A little boy rides a tricycle to bring flowers to his sweetheart."),
    ("A woman paints a picture outdoors.", "An artist painting by a lake.", "A woman paints a picture outdoors, but the ducks keep critiquing it.", "A woman paints a picture outdoors of the man she loves."),
    ("A dog catches a frisbee in the air.", "A dog leaping for a flying disc.", "A dog catches a frisbee in the air and demands a contract.", "A dog catches a frisbee in the air to impress his true love."),
    ("An old man feeds pigeons in a square.", "A man feeding birds in a plaza.", "An old man feeds pigeons in a square, recruiting them for his army.", "An old man feeds pigeons in a square, remembering his late wife fondly."),
    ("Two girls laugh on a swing.", "Girls swinging in a playground.", "Two girls laugh on a swing, having just pranked their brother.", "Two girls laugh on a swing under the warm glow of a lovely sunset."),
    ("A runner crosses the finish line.", "A man finishing a race.", "A runner crosses the finish line, then asks where the snacks are.", "A runner crosses the finish line and into the arms of his love."),
    ("A boat sails on a calm lake.", "A sailboat on the water.", "A boat sails on a calm lake, because it forgot how to fly.", "A boat sails on a calm lake, carrying two lovers into the sunset."),
]


def _jpeg(i: int) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (32, 24), ((37 * i) % 256, (91 * i) % 256, (53 * i + 80) % 256)).save(buf, format="JPEG", quality=90)
    return buf.getvalue()


def flickr_name(i: int) -> str:
    """The FlickrStyle10K name of fixture image i ('<flickr id>_<secret>.jpg'); Flickr30k names it '<flickr id>.jpg'."""
    return f"{1000000 + 7919 * i}_{(0x9e3779b1 * (i + 1)) % 16**10:010x}.jpg"


def write_flickrstyle(out: str | Path, n: int | None = None) -> Path:
    """out/FlickrStyle_v0.9/{humor,romantic}/ (+ train.p), out/results_20130124.token, out/flickr30k-images/.
    Returns the FlickrStyle folder (what `open_preferences` takes; the token file and images are found beside it)."""
    out = Path(out)
    scenes = SCENES[:n] if n else SCENES
    names = [flickr_name(i) for i in range(len(scenes))]
    root = out / "FlickrStyle_v0.9"
    for d, col, fname in (("humor", 2, "funny_train.txt"), ("romantic", 3, "romantic_train.txt")):
        atomic_write_bytes(root / d / "train.p", pickle.dumps(names, protocol=2))
        atomic_write_text(root / d / fname, "".join(s[col] + "\n" for s in scenes))
    token = "".join(f"{nm.split('_')[0]}.jpg#{k}\t{s[k]}\n" for nm, s in zip(names, scenes) for k in (0, 1))
    atomic_write_text(out / "results_20130124.token", token)
    for i, nm in enumerate(names):
        atomic_write_bytes(out / "flickr30k-images" / (nm.split("_")[0] + ".jpg"), _jpeg(i))
    return root


def write_newyorker(out: str | Path, config: str = "explanation") -> Path:
    """A save_to_disk DatasetDict (train/validation/test) with the columns of jmhessel/newyorker_caption_contest's
    `explanation` config (caption_choices: the explained caption) or `matching` config (caption_choices: five
    choices, label: the letter of the right one); a `*_from_pixels` config drops the annotators' columns
    (image_description and the rest), as the hub's do. Contest c has rows for several captions of one cartoon."""
    import datasets

    rows = []
    for i, s in enumerate(SCENES):
        contest = 500 + i // 2  # two rows per cartoon: the split must keep them together
        base = {"image": {"bytes": _jpeg(i // 2), "path": None}, "contest_number": contest, "image_location": "a park",
                "image_description": SCENES[i - i % 2][0], "image_uncanny_description": "nothing is unusual",
                "entities": ["https://en.wikipedia.org/wiki/Dog"], "questions": ["why?"], "from_description": "",
                "n_tokens_label": 12, "instance_id": f"{contest:04d}-{i:03d}"}
        if config.endswith("_from_pixels"):
            base = {k: v for k, v in base.items() if k in ("image", "contest_number", "n_tokens_label", "instance_id")}
        if config.startswith("explanation"):
            rows.append({**base, "caption_choices": s[2], "label": f"The joke is that {s[0].lower()}"})
        else:
            choices = [SCENES[(i + k) % len(SCENES)][2] for k in range(5)]
            j = i % 5
            choices[0], choices[j] = choices[j], choices[0]
            rows.append({**base, "caption_choices": choices, "label": "ABCDE"[j]})
    feats = {"image": datasets.Image(), "contest_number": datasets.Value("int32"), "entities": datasets.Sequence(datasets.Value("string")),
             "questions": datasets.Sequence(datasets.Value("string")), "n_tokens_label": datasets.Value("int32")}
    bars = datasets.is_progress_bar_enabled()
    datasets.disable_progress_bars()  # 30 rows: the bars would only be noise
    try:
        ds = datasets.Dataset.from_list(rows)
        ds = ds.cast(datasets.Features({c: feats.get(c, ds.features[c]) for c in ds.column_names}))
        dd = datasets.DatasetDict({"train": ds.select(range(20)), "validation": ds.select(range(20, 25)), "test": ds.select(range(25, 30))})
        dd.save_to_disk(str(out))
    finally:
        if bars:
            datasets.enable_progress_bars()
    return Path(out)
