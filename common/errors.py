"""The course's one exception type: its message is a single line that says what to do."""


class CourseError(Exception):
    """An error the user can fix (wrong environment, bad input, stale file); printed without a traceback."""
