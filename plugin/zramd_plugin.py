"""nbdkit entry for a checkout: ``nbdkit python plugin/zramd_plugin.py size=1G ...``.

The plugin itself is ``zramd/nbdkit_plugin.py`` (shipped in the package; ``zramd serve`` runs
that file directly). nbdkit looks its callbacks up on the script's module, so this one
imports them all.
"""

from __future__ import annotations

import os
import sys

# nbdkit does not put the script's directory on sys.path; the checkout holds the package
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from zramd.nbdkit_plugin import *  # noqa: F403
