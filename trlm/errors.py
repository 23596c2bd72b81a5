"""The one error type trlm reports to users: a single line that says what is wrong and what to do."""


class TrlmError(Exception):
    """A problem with the user's config, inputs or environment (not a bug in trlm)."""
