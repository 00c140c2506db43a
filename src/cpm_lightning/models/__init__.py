from cpm_lightning.models.cpm import CPM, CPMConfig, count_parameters, forward_flops
from cpm_lightning.models.receptive_field import receptive_fields

__all__ = ["CPM", "CPMConfig", "count_parameters", "forward_flops", "receptive_fields"]
