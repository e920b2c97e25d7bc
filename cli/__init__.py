"""The click front end: parse options, build configs, call the library."""
