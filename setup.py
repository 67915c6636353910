"""pip/dev tooling entry: installs the Python package and the ``cascade-sd`` console command.

The ROS build (messages, launch files, node executables) is CMakeLists.txt's job; see README.
"""

from setuptools import find_packages, setup

setup(
    name="cascade_sd_ros",
    version="0.1.0",
    description="Cascaded speculative decoding across event, frame and video models for ROS 2",
    packages=find_packages(include=["cascade_sd_ros", "cascade_sd_ros.*"]),
    package_data={"cascade_sd_ros": ["zoo/**/*", "zoo/*", "ros/fastdds_profile.xml"]},
    python_requires=">=3.10",
    entry_points={"console_scripts": ["cascade-sd = cascade_sd_ros.tools.cli:entry"]},
)
