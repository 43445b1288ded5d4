"""What the device and the tools both speak: the payload envelope and its JSON Schema, the topic tree, the
signed model-push message, bundle signatures, and the one MQTT client factory with its flags.
"""
