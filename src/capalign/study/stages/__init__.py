"""The stages a recipe can name, in the order they run. To add one, write its Stage subclass (see
study/stage.py) and put an instance here, after the stages it needs."""

from ..stage import Stage
from .base_model import BaseStage
from .data import DataStage
from .diagnose import DiagnoseStage
from .evaluate import CaptionStage, EvaluateStage
from .features import FeaturesStage
from .rl import RLStage
from .style import StyleStage
from .summary import SummaryStage
from .vizer import MapperStage, VizerStage

STAGES: dict[str, Stage] = {s.name: s for s in (
    DataStage(), BaseStage(), MapperStage(), DiagnoseStage(), VizerStage(), RLStage(),
    # new per-seed training stages go here: they add systems that caption/evaluate then pick up
    CaptionStage(), EvaluateStage(), FeaturesStage(),
    StyleStage(),  # study-wide: its own sweep over styles, budgets and seeds from the first seed's Base
    SummaryStage(),
    # the report stage goes last
)}
