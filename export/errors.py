"""The one error a user's flags raise: its message names the flag and says what is wrong."""


class UserInputError(Exception):
    """A bad flag value: the message names the flag and says what is wrong."""
