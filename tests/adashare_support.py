"""The tiny procedural config the AdaShare tests share."""

# Two tasks on 16 tiny scenes, R18 at width 4: every phase in seconds.
TINY = {
    "seed": 5,
    "device": "cpu",
    "progress": False,
    "baselines": [],
    "data": {
        "dataset": "procedural",
        "tasks": ["seg", "depth"],
        "size": 16,
        "num_train": 16,
        "num_val": 4,
        "num_test": 4,
    },
    "model": {"backbone": "resnet18", "head": "light", "width": 4},
    "train": {
        "batch_size": 4,
        "eval_batch_size": 4,
        "total_iters": 14,
        "warmup_iters": 2,
        "weight_iters": 2,
        "policy_iters": 2,
        "curriculum_speed": 1,
        "ckpt_every": 5,
    },
    "sample": {"num": 1},
    "retrain": {"iters": 2, "val_freq": 2},
}
