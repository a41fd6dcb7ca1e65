"""Uploading a trained folder to the Hugging Face Hub: `capalign publish FOLDER --repo_id USER/NAME` and the
training commands' `--push_to_hub USER/NAME` (after the run, the same upload).

huggingface_hub's standard token lookup (HF_TOKEN, else the token `hf auth login` saved under HF_HOME); no
token is one `error:` line, checked before any work. Repositories are private unless `--public`. The upload
is the folder as `caption --adapter` / `--model` read it: checkpoints, TensorBoard logs, feature caches and
temporary folders stay behind. The model card (README.md, training/card.py) travels with it.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from .. import CapalignError
from ..config import arg
from ..utils import print0

PUSH_HELP = ("After training, upload the trained folder (with its model card; no checkpoints or logs) to this Hub repository, "
             "USER/NAME (created private unless --hub_public); the token from HF_TOKEN or `hf auth login`, checked before training.")
PUBLIC_HELP = "With --push_to_hub: create the repository public."

# what stays behind: resumable state and logs of the run, not the trained model
IGNORE = ["checkpoint-*/**", ".tmp-*/**", "runs/**", "feature-cache/**", ".capalign-check-*", "*.tmp"]
# what makes a folder a trained output capalign can publish (one of them)
MARKERS = ("adapter_config.json", "README.md", "capalign_config.json", "config.json")


def hub_token() -> str:
    """The token huggingface_hub would use, or a CapalignError saying how to give one."""
    from huggingface_hub import get_token

    token = get_token()
    if not token:
        raise CapalignError("no Hugging Face token for the upload: set HF_TOKEN or run `hf auth login` (a token with write access)")
    return token


def push_folder(folder: str | Path, repo_id: str, private: bool = True) -> str:
    """Create `repo_id` (private unless told otherwise; an existing repo keeps its visibility) and upload `folder`
    into it; returns the repo's URL."""
    from huggingface_hub import HfApi
    from huggingface_hub.errors import HfHubHTTPError

    folder = Path(folder)
    if not folder.is_dir() or not any((folder / m).is_file() for m in MARKERS):
        raise CapalignError(f"{folder} is not a trained folder (no {', '.join(MARKERS)}): nothing to publish")
    if not repo_id or repo_id.count("/") > 1 or repo_id.strip() != repo_id:
        raise CapalignError(f"--repo_id must be NAME or USER/NAME, got {repo_id!r}")
    api = HfApi(token=hub_token())
    try:
        url = api.create_repo(repo_id, private=private, exist_ok=True, repo_type="model")
        api.upload_folder(repo_id=repo_id, folder_path=str(folder), repo_type="model", ignore_patterns=IGNORE,
                          commit_message=f"capalign: upload {folder.name}")
    except (HfHubHTTPError, OSError) as e:
        raise CapalignError(f"upload of {folder} to {repo_id} failed: {e}") from e
    print0(f"uploaded {folder} to {url} ({'private' if private else 'public'})")
    return str(url)


@dataclass
class PublishConfig:
    """Upload a trained folder (an adapter of vizer / style / rl train, a mapper, a nano model or judge) to the Hub."""

    path: str = arg(help="The folder to upload: a training command's --out (adapter, mapper or model folder).")
    repo_id: str = arg(help="Hub repository: USER/NAME (created if missing).")
    private: bool = arg(True, "Create the repository private (the default).")
    public: bool = arg(False, "Create the repository public instead.")

    def __post_init__(self):
        if self.public:
            self.private = False


def run(cfg: PublishConfig) -> str:
    return push_folder(cfg.path, cfg.repo_id, private=cfg.private)
