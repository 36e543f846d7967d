"""Values a hostile answer returns, shared by the grading tests."""


class AlwaysEqual:
    """Equal to everything, unequal to nothing: a comparison that calls it is fooled."""

    def __eq__(self, other):
        return True

    def __ne__(self, other):
        return False

    __hash__ = object.__hash__

    def __repr__(self):
        return "AlwaysEqual()"
