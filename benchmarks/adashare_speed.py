"""AdaShare training-step and inference speed, ours vs the official masked mode; see
efficientdl.adashare.bench.

python benchmarks/adashare_speed.py [--device cuda] [--precision bf16] [--channels-last]
"""

import argparse

from efficientdl.adashare import bench

if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=bench.__doc__.splitlines()[0])
    bench.add_arguments(parser)
    bench.run(parser.parse_args())
