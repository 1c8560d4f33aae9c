"""`python -m plumbctl`."""

from plumbctl.main import main

main()
