from posekit.layers.graph_conv import GraphConv
from posekit.layers.nonlocal_block import GraphNonLocal
