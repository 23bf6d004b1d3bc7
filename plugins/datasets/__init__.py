"""Built-in matl-keras plugins, installed as `matl_keras_plugins`."""
