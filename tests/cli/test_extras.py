"""Commands that need an optional extra stop with one line naming it."""

from __future__ import annotations

import pytest

from cxrlab.cli.errors import require_extra
from cxrlab.errors import ConfigError


def test_a_missing_extra_names_the_pip_command():
    with pytest.raises(ConfigError, match=r"no_such_module_zz not installed; pip install 'cxrlab\[serve\]'"):
        require_extra("serve", "json", "no_such_module_zz")
    require_extra("serve", "json")       # present: nothing happens
