"""``python -m bayescale`` runs the command line."""

from .cli import main
from .train.distributed import exit_process

exit_process(main())
