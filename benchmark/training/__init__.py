"""The trainer above the methods: batches composed on the device (sampling), device, precision and thread
settings (runtime), and the train stage (train), which drives any registered method through its contract."""
