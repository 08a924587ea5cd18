"""User-facing errors.

A `UserError` is a mistake the user can fix (a recipe key, a dataset file, a checkpoint): the CLI prints
its message as one line and exits with status 2, without a traceback. Anything else is a bug in
cosmos-engine and keeps its traceback. Messages name the file, key or value and say what was expected.
"""


class UserError(Exception):
    """A mistake in what the user gave us; the message says what and where."""


class RecipeError(UserError):
    """A TOML recipe, a --set override or a sample file is invalid."""


class DatasetError(UserError):
    """A dataset folder or a video in it is missing, unreadable or unsuitable."""


class CheckpointError(UserError):
    """A checkpoint file or folder is missing, incomplete or has the wrong keys or shapes."""


class BuildError(UserError):
    """The compiled extension is missing or was built for another torch."""
