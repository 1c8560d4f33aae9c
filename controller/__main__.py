"""`python -m controller`: run the node agent (the same as `plumb-agent`)."""

from controller.agent import main

main()
