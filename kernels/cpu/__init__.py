"""Parallel Numba kernels: the "numba" backend. See kernels/README.md."""
from .conv2d import (conv2d_forward, conv2d_backward_input, conv2d_backward_weight,
                     conv2d_backward_bias)
from .batchnorm import (batch_norm_train_forward, batch_norm_train_backward,
                        batch_norm_eval_forward, batch_norm_eval_backward)
from .pooling import (max_pool2d_forward, max_pool2d_backward, avg_pool2d_forward,
                      avg_pool2d_backward, global_avg_pool2d_forward,
                      global_avg_pool2d_backward)
from .conv2d_nhwc import (conv2d_forward_nhwc, conv2d_backward_input_nhwc,
                          conv2d_backward_weight_nhwc, conv2d_backward_bias_nhwc)
from .pooling_nhwc import (max_pool2d_forward_nhwc, max_pool2d_backward_nhwc,
                           avg_pool2d_forward_nhwc, avg_pool2d_backward_nhwc,
                           global_avg_pool2d_forward_nhwc, global_avg_pool2d_backward_nhwc)
from .elementwise import bias_act_forward, act_backward
