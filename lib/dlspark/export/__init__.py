"""Export workflow: registered torch / Keras models to ONNX (fp32, int8), TorchScript and TFLite, parity-checked on a
table split and registered in MLflow. It sits above ``dlspark.models`` (pure model definitions), ``dlspark.inference``
(it checks exports with the predictors) and ``dlspark.tracking``; none of those imports it.
"""
