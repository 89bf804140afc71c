"""Write the `make run` config: the example, with mDNS kept on loopback.

A developer's first run should not announce itself on the LAN; set
`discovery.interfaces` to null in the copy to join a real fleet.
"""

import json
import os
import sys

source, target = sys.argv[1], sys.argv[2]
with open(source, encoding="utf-8") as fh:
    config = json.load(fh)
config["discovery"]["interfaces"] = ["127.0.0.1"]
fd = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
with os.fdopen(fd, "w", encoding="utf-8") as out:
    json.dump(config, out, indent=2)
    out.write("\n")
