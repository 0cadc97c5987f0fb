"""What AdaShare trains and measures: the task losses and policy regularisers, the dense
metrics and Δ_T, and the per-task-kind dispatch of both."""
