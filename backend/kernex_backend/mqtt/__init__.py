"""The backend's MQTT side: the bridge to the broker and the handlers of device traffic."""
