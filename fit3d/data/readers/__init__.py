"""fit3d.data.readers"""
