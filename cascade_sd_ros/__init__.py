"""cascade_sd_ros: verified captions from event + RGB cameras by cascaded speculative decoding.

The generated interface code (``cascade_sd_ros.msg``) is installed by the ament build; when the
package runs from its source tree, ``extend_path`` lets that installed ``msg`` subpackage be found.
"""

__path__ = __import__("pkgutil").extend_path(__path__, __name__)

__version__ = "0.1.0"
