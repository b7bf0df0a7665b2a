"""The one error type a user can cause: its message is one sentence naming the thing and the fix."""


class CaptionerError(Exception):
    """A problem with the user's input or set-up, reported without a traceback."""
