"""The errors a user can cause with bad input; the CLI prints them without a traceback."""

from zeroseg.config import ConfigError
from zeroseg.data.classes import ClassSplitError
from zeroseg.data.io import ImageError
from zeroseg.data.protocol import ProtocolError
from zeroseg.data.shapeworld.spec import SpecError
from zeroseg.engine.checkpoint import CheckpointError
from zeroseg.engine.trainer import NonFiniteLossError

USER_ERRORS = (
    ConfigError,
    ClassSplitError,
    ImageError,
    ProtocolError,
    SpecError,
    CheckpointError,
    NonFiniteLossError,
    FileNotFoundError,
    KeyError,
    ValueError,
)
