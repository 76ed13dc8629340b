"""The error a user can fix: the CLI prints it as one line and exits 2 (anything else is a bug:
traceback, exit 1). Its message names the file, key or row and says what to do."""


class UserError(ValueError):
    """Bad input, a bad recipe, a busy or foreign run directory: fixable by the user."""
