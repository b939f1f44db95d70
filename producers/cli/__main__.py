"""`python -m producers.cli` (how `upscale worker --processes N` starts its children)."""

from producers.cli import main

main()
