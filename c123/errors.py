"""One error type for everything a user can fix: its message is a single line naming the thing and the fix."""


class C123Error(Exception):
    """A user-facing error: bad input, missing weights, missing dataset. The message is one line."""

    def __init__(self, message: str):
        super().__init__(" ".join(str(message).split()))


class InputError(C123Error):
    """An input file (image, mask, depth, prompt) cannot be used as given."""


class WeightsMissingError(C123Error):
    """A model's weights are not available locally (names the model and the download command)."""


class DatasetError(C123Error):
    """A dataset folder is missing or does not match any known layout."""


class GeometryError(C123Error):
    """A 3D quantity is invalid: zero-radius camera, empty mesh, non-finite density."""
