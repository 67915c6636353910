import sys

from cascade_sd_ros.tools.cli import main

sys.exit(main())
