from cascade_sd_ros.tools.cli import entry

entry()
