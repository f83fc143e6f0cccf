"""Where metrics and events go: files, TensorBoard, the console."""
