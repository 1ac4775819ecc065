"""Built-in multimodal tasks, registered under the ``smfp/`` namespace (issue 4)."""
