"""Built-in report plugins (entry-point group `matl_keras.reports`)."""
