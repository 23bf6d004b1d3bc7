from matl_keras.cli import run

run()
