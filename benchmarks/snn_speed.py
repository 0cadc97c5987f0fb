"""TSSL-BP step vs ANN floor and the neuron alone; see efficientdl.snn.bench.

python benchmarks/snn_speed.py [--device cuda] [--nets all] [--iters 50]
"""

import argparse

from efficientdl.snn import bench

if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=bench.__doc__.splitlines()[0])
    bench.add_arguments(parser)
    bench.run(parser.parse_args())
