"""Replaced by `refengine bench throughput` (refengine/bench/throughput.py; docs/bench.md): the same offline
serving benchmark (LMDeploy's profile_throughput), now with a lognormal length spread or a ShareGPT file,
percentiles, peak memory and --json / --csv. This script only forwards its arguments:

    python tools/bench_throughput.py MODEL [flags]   ==   refengine bench throughput MODEL [flags]

(the old --num-prompts / --prompt-len MIN MAX / --output-len MIN MAX are now --num-requests and the medians
--prompt-tokens / --output-tokens with --len-sigma).
"""

import sys

from refengine.cli.main import main

if __name__ == "__main__":
    main(["bench", "throughput", *sys.argv[1:]])
