"""The InfMAE model (docs/specification.md, 'The model') in eager PyTorch."""

from infmae.model.infmae import InfMAE, InfMAEOutput, build_model, encoder_state_dict

__all__ = ["InfMAE", "InfMAEOutput", "build_model", "encoder_state_dict"]
