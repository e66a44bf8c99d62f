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


def count_values(value, budget: int) -> int:
    """How many values `value` holds, nested lists, tuples, sets and dicts expanded (a shared sub-list counted
    each time it appears, as printing it would), stopping once past `budget`: a YAML alias bomb of 9^9 values
    is counted in `budget` steps, not expanded."""
    seen, stack = 0, [value]
    while stack and seen <= budget:
        item = stack.pop()
        seen += 1
        if isinstance(item, dict):
            stack.extend(item.keys())
            stack.extend(item.values())
        elif isinstance(item, (list, tuple, set, frozenset)):
            stack.extend(item)
    return seen


def shown(value, limit: int = 120) -> str:
    """A value as JSON text (repr where JSON has no form) for a one-line message, at most about `limit`
    characters; a value too large to print is summarised without being expanded."""
    import json

    if count_values(value, 4 * limit) > 4 * limit:
        kind = type(value).__name__
        size = f" of {len(value):,} items" if hasattr(value, "__len__") else ""
        return f"<a {kind}{size}, over {4 * limit:,} values in all>"
    try:
        text = json.dumps(list(value) if isinstance(value, tuple) else value)
    except (TypeError, ValueError):
        text = repr(value)
    return text if len(text) <= limit else f"{text[:limit]}... ({len(text):,} characters)"
