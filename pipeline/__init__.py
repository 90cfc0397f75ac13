"""The TFX pipeline: create_pipeline(), its configs, the local and Kubeflow runners and the `ich` CLI."""
