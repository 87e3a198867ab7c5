"""What the model looks at: pictures of its feature maps stage by stage (``tools/visualize.py``)."""
