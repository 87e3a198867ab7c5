"""What the model looks at: pictures of its feature maps stage by stage (``tools/visualize.py``) and class
activation maps, where it looks for a class (``tools/cam.py``)."""
