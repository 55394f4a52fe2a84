"""dlspark: Spark-native distributed deep learning."""
