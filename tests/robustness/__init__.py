"""The hostile-user suite (issue 17): every command driven as a child process over a matrix of bad inputs,
faults and interruptions, asserting one ``prog: error: ...`` line that names the file or flag, the exit code
(2; 130 for SIGINT, 143 for SIGTERM), no traceback, no file that existed before changed and nothing left behind.

``forkserver.py`` imports the console scripts once and forks one real process per case (a CLI spends 6-9 s in
imports on the 2-core test machine); ``test_units.py`` checks it against the installed script itself.
Run: ``.venv/bin/python -m pytest tests/robustness -q`` (about a minute).
"""
