"""Names shared by deployment's parts and the command line, defined once (importing this is cheap:
the CLI builds its parser from it without loading torch)."""

TOKEN_ENV = "ROBOPOLICY_TOKEN"  # environment variable holding the policy server's shared token
STRATEGIES = ("sync", "async", "rtc", "ensemble")  # chunk execution strategies (deploy/runtime.py)
