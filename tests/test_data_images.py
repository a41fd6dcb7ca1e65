"""load_image: every PIL mode to RGB, EXIF orientation, downscaling, and bad files as BadImage."""

import io

import numpy as np
import pytest
from PIL import Image

from capalign.data.images import BadImage, load_image, to_rgb


def _png(img, **kw):
    b = io.BytesIO()
    img.save(b, format="PNG", **kw)
    return b.getvalue()


def test_rgba_and_la_composite_on_white(tmp_path):
    rgba = Image.new("RGBA", (8, 8), (255, 0, 0, 0))
    rgba.putpixel((0, 0), (0, 0, 255, 255))
    out = load_image(_png(rgba))
    assert out.mode == "RGB" and out.getpixel((1, 1)) == (255, 255, 255) and out.getpixel((0, 0)) == (0, 0, 255)
    la = Image.new("LA", (4, 4), (0, 128))  # half-transparent black over white -> mid grey
    assert abs(load_image(_png(la)).getpixel((0, 0))[0] - 127) <= 2


def test_palette_with_transparency():
    p = Image.new("P", (4, 4), 0)
    p.putpalette([0, 255, 0] + [200, 0, 0] * 255)
    p.putpixel((1, 1), 1)
    data = _png(p, transparency=0)
    assert Image.open(io.BytesIO(data)).info.get("transparency") == 0
    out = load_image(data)
    assert out.getpixel((0, 0)) == (255, 255, 255) and out.getpixel((1, 1)) == (200, 0, 0)
    gif = io.BytesIO()
    p.save(gif, format="GIF", transparency=0)
    assert load_image(gif.getvalue()).getpixel((0, 0)) == (255, 255, 255)


def test_cmyk_gray_and_1bit(tmp_path):
    cmyk = Image.new("CMYK", (4, 4), (0, 255, 255, 0))  # pure red in CMYK
    path = tmp_path / "c.jpg"
    cmyk.save(path, quality=95)
    r, g, b = load_image(path).getpixel((2, 2))
    assert r > 200 and g < 60 and b < 60
    assert load_image(Image.new("L", (3, 3), 77)).getpixel((0, 0)) == (77, 77, 77)
    one = Image.new("1", (3, 3), 1)
    assert load_image(_png(one)).getpixel((0, 0)) == (255, 255, 255)


def test_high_bit_depth_is_scaled_not_clipped(tmp_path):
    a = np.full((6, 6), 65535, np.uint16)
    a[0, 0], a[0, 1] = 0, 32896  # ~half
    path = tmp_path / "16.png"
    Image.fromarray(a).save(path)
    assert Image.open(path).mode.startswith("I;16")
    out = load_image(path)
    assert out.getpixel((3, 3)) == (255, 255, 255) and out.getpixel((0, 0)) == (0, 0, 0)
    assert abs(out.getpixel((1, 0))[0] - 128) <= 1
    i32 = Image.fromarray(a.astype(np.int32))  # mode I holding 16-bit data
    assert load_image(i32).getpixel((1, 0))[0] in (127, 128, 129)
    f = Image.fromarray(np.full((2, 2), 0.5, np.float32))
    assert load_image(f).getpixel((0, 0))[0] in (127, 128)


def test_exif_orientation_is_applied(tmp_path):
    img = Image.new("RGB", (40, 20), (0, 0, 255))
    img.paste((255, 0, 0), (0, 0, 10, 10))  # red in the top-left corner of the stored pixels
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90 CW to display"
    path = tmp_path / "rot.jpg"
    img.save(path, quality=95, exif=exif)
    out = load_image(path)
    assert out.size == (20, 40)
    r, g, b = out.getpixel((17, 3))  # stored top-left ends up top-right after a 90-degree CW turn
    assert r > 200 and b < 60
    assert load_image(path).getpixel((3, 3))[2] > 200


def test_huge_images_are_downscaled(tmp_path):
    wide = Image.new("RGB", (5000, 300), (10, 200, 30))
    assert load_image(wide, max_side=1000).size == (1000, 60)
    path = tmp_path / "big.jpg"
    wide.save(path, quality=90)
    out = load_image(path, max_side=512)
    assert out.size == (512, 31) and out.mode == "RGB"
    assert load_image(path, max_side=8000).size == (5000, 300)


def test_decompression_bomb_is_bad(monkeypatch, tmp_path):
    path = tmp_path / "bomb.png"
    Image.new("L", (300, 300)).save(path)
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 300 * 300 // 3)  # 1x-2x: a warning; >2x: an error
    with pytest.raises(BadImage, match="decompression bomb"):
        load_image(path)
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 300 * 300 // 1.5)
    with pytest.raises(BadImage, match="decompression bomb"):
        load_image(path)


def test_bad_files(tmp_path):
    good = Image.new("RGB", (64, 64), (1, 2, 3))
    for fmt in ("PNG", "JPEG"):
        b = io.BytesIO()
        good.save(b, format=fmt)
        with pytest.raises(BadImage) as e:
            load_image(b.getvalue()[: len(b.getvalue()) // 2])
        assert "\n" not in str(e.value)
    txt = tmp_path / "notes.jpg"
    txt.write_text("hello, not an image")
    with pytest.raises(BadImage, match="not an image"):
        load_image(txt)
    with pytest.raises(BadImage, match="not found"):
        load_image(tmp_path / "missing.png")
    with pytest.raises(BadImage, match="empty"):
        load_image(b"")


def test_rgb_passthrough():
    img = Image.new("RGB", (5, 5), (9, 9, 9))
    assert to_rgb(img) is img and load_image(img).getpixel((0, 0)) == (9, 9, 9)
