"""The installed package's version agrees with the C header's, which is where it is written."""
import importlib.metadata
import os
import re

import msda

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def header_version():
    with open(os.path.join(REPO, "include", "msda", "msda.h")) as f:
        text = f.read()
    parts = [re.search(rf"#define MSDA_VERSION_{p} (\d+)", text).group(1)
             for p in ("MAJOR", "MINOR", "PATCH")]
    return ".".join(parts)


def test_versions_agree():
    version = header_version()
    assert msda.library_version() == version
    assert msda.__version__ == version
    assert importlib.metadata.version("msda-ops") == version
