"""Small random-init transformers models of every family msda.nn.patch_transformers serves,
built from their config classes (no downloads), with example inputs; shared by
test_transformers_families.py and bench/bench_families.py."""
import torch
import transformers as T

IMAGE = 64


def _resnet():
    return T.ResNetConfig(embedding_size=8, hidden_sizes=[8, 16, 16, 16], depths=[1, 1, 1, 1],
                          layer_type="basic", out_features=["stage2", "stage3", "stage4"])


def _rtdetr_resnet():
    return T.RTDetrResNetConfig(embedding_size=8, hidden_sizes=[8, 16, 16, 16], depths=[1, 1, 1, 1],
                                layer_type="basic", out_features=["stage2", "stage3", "stage4"])


def _swin(out_features):
    return T.SwinConfig(image_size=IMAGE, patch_size=4, embed_dim=8, depths=[1, 1, 1, 1],
                        num_heads=[1, 1, 1, 1], window_size=2, out_features=out_features)


def _hgnet(out_features=("stage2", "stage3", "stage4")):
    return T.HGNetV2Config(
        stem_channels=[3, 8, 8], stage_in_channels=[8, 16, 16, 16], stage_mid_channels=[8, 8, 8, 8],
        stage_out_channels=[16, 16, 16, 16], stage_num_blocks=[1, 1, 1, 1],
        stage_downsample=[False, True, True, True], stage_light_block=[False, False, True, True],
        stage_kernel_size=[3, 3, 3, 3], stage_numb_of_layers=[1, 1, 1, 1], embeddings_size=8,
        hidden_sizes=[16, 16, 16, 16], depths=[1, 1, 1, 1], out_features=list(out_features))


def _bert():
    return T.BertConfig(vocab_size=100, hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
                        intermediate_size=16, max_position_embeddings=32)


_RT = dict(encoder_hidden_dim=16, encoder_in_channels=[16, 16, 16], feat_strides=[8, 16, 32],
           encoder_layers=1, encoder_ffn_dim=16, encoder_attention_heads=2, d_model=16,
           num_queries=8, decoder_in_channels=[16, 16, 16], decoder_ffn_dim=16,
           num_feature_levels=3, decoder_n_points=2, decoder_layers=1, decoder_attention_heads=2,
           num_denoising=0, dropout=0.0, attention_dropout=0.0, activation_dropout=0.0)
_DETR = dict(d_model=32, encoder_layers=1, decoder_layers=1, encoder_attention_heads=2,
             decoder_attention_heads=2, encoder_ffn_dim=32, decoder_ffn_dim=32, num_queries=8,
             encoder_n_points=2, decoder_n_points=2, num_feature_levels=3, dropout=0.0,
             attention_dropout=0.0, activation_dropout=0.0)


def _pixels(batch=2, seed=0):
    return {"pixel_values": torch.randn(batch, 3, IMAGE, IMAGE, generator=torch.Generator().manual_seed(seed))}


def _text_pixels(batch=2, seed=0):
    g = torch.Generator().manual_seed(seed)
    return {"pixel_values": torch.randn(batch, 3, IMAGE, IMAGE, generator=g),
            "input_ids": torch.randint(1, 100, (batch, 6), generator=g)}


def deformable_detr():
    return T.DeformableDetrModel(T.DeformableDetrConfig(backbone_config=_resnet(), **_DETR)), _pixels()


def grounding_dino():
    cfg = T.GroundingDinoConfig(backbone_config=_swin(["stage2", "stage3", "stage4"]), text_config=_bert(),
                                max_text_len=16, **_DETR)
    return T.GroundingDinoModel(cfg), _text_pixels()


def mm_grounding_dino():
    cfg = T.MMGroundingDinoConfig(backbone_config=_swin(["stage2", "stage3", "stage4"]), text_config=_bert(),
                                  max_text_len=16, **_DETR)
    return T.MMGroundingDinoModel(cfg), _text_pixels()


def rt_detr():
    return T.RTDetrModel(T.RTDetrConfig(backbone_config=_rtdetr_resnet(), **_RT)), _pixels()


def rt_detr_v2(method="default"):
    cfg = T.RTDetrV2Config(backbone_config=_rtdetr_resnet(), decoder_n_levels=3, decoder_method=method, **_RT)
    return T.RTDetrV2Model(cfg), _pixels()


def d_fine(method="default"):
    rt = dict(_RT, decoder_n_points=[1, 3, 2])
    cfg = T.DFineConfig(backbone_config=_hgnet(), decoder_n_levels=3, decoder_method=method,
                        encode_proj_layers=[2], depth_mult=0.34, hidden_expansion=0.5, **rt)
    return T.DFineModel(cfg), _pixels()


def deimv2(method="default"):
    rt = dict(_RT, decoder_n_points=[1, 3, 2])
    cfg = T.Deimv2Config(backbone_config=_hgnet(), decoder_n_levels=3, decoder_method=method,
                         encode_proj_layers=[2], depth_mult=0.34, hidden_expansion=0.5, **rt)
    return T.Deimv2Model(cfg), _pixels()


def mask2former():
    cfg = T.Mask2FormerConfig(backbone_config=_swin(["stage1", "stage2", "stage3", "stage4"]), feature_size=32,
                              mask_feature_size=32, hidden_dim=16, encoder_feedforward_dim=16, encoder_layers=1,
                              decoder_layers=2, num_attention_heads=2, dim_feedforward=16, num_queries=8,
                              dropout=0.0)
    return T.Mask2FormerModel(cfg), _pixels()


def oneformer():
    cfg = T.OneFormerConfig(backbone_config=_swin(["stage1", "stage2", "stage3", "stage4"]), conv_dim=32,
                            mask_dim=32, hidden_dim=32, encoder_feedforward_dim=16, encoder_layers=1,
                            decoder_layers=2, num_attention_heads=2, dim_feedforward=16, num_queries=8,
                            text_encoder_width=16, text_encoder_num_layers=1, text_encoder_context_length=8,
                            task_seq_len=8, dropout=0.0, is_training=False)
    g = torch.Generator().manual_seed(0)
    inputs = dict(_pixels(), task_inputs=torch.randint(1, 100, (2, 8), generator=g))
    return T.OneFormerModel(cfg), inputs


FAMILIES = {
    "DeformableDetr": deformable_detr,
    "GroundingDino": grounding_dino,
    "MMGroundingDino": mm_grounding_dino,
    "RTDetr": rt_detr,
    "RTDetrV2": rt_detr_v2,
    "DFine": d_fine,
    "Deimv2": deimv2,
    "Mask2Former": mask2former,
    "OneFormer": oneformer,
}


def _pp(**extra):
    return dict(backbone_config=_hgnet(), **dict(_RT, **extra))


def pp_doclayout_v2():
    return T.PPDocLayoutV2Model(T.PPDocLayoutV2Config(**_pp())), _pixels()


def pp_doclayout_v3():
    extra = dict(mask_feature_channels=[16, 16], x4_feat_dim=16, num_prototypes=4)
    cfg = T.PPDocLayoutV3Config(**dict(_pp(**extra), backbone_config=_hgnet(("stage1", "stage2", "stage3", "stage4"))))
    return T.PPDocLayoutV3Model(cfg), _pixels()


def pp_doclayout_v4():
    return T.PPDocLayoutV4Model(T.PPDocLayoutV4Config(**_pp())), _pixels()


def lw_detr():
    vit = T.LwDetrViTConfig(hidden_size=16, num_hidden_layers=2, num_attention_heads=2, mlp_ratio=2,
                            image_size=IMAGE, patch_size=8, window_block_indices=[0],
                            out_indices=[1, 2], num_windows=4)
    cfg = T.LwDetrConfig(backbone_config=vit, d_model=16, decoder_layers=1, decoder_self_attention_heads=2,
                         decoder_cross_attention_heads=2, decoder_ffn_dim=16, decoder_n_points=2,
                         num_queries=8, group_detr=1, projector_scale_factors=[1.0], c2f_num_blocks=1,
                         dropout=0.0)
    return T.LwDetrModel(cfg), _pixels()


def rf_detr():
    dino = T.RfDetrDinov2Config(hidden_size=16, num_hidden_layers=2, num_attention_heads=2, mlp_ratio=2,
                                image_size=IMAGE, patch_size=8, out_indices=[1, 2], num_windows=2)
    cfg = T.RfDetrConfig(backbone_config=dino, d_model=16, decoder_layers=1, decoder_self_attention_heads=2,
                         decoder_cross_attention_heads=2, decoder_ffn_dim=16, decoder_n_points=2,
                         num_queries=8, group_detr=1, c2f_num_blocks=1, dropout=0.0)
    return T.RfDetrModel(cfg), _pixels()


FAMILIES.update({
    "PPDocLayoutV2": pp_doclayout_v2,
    "PPDocLayoutV3": pp_doclayout_v3,
    "PPDocLayoutV4": pp_doclayout_v4,
    "LwDetr": lw_detr,
    "RfDetr": rf_detr,
})


def omdet_turbo():
    clip = T.CLIPTextConfig(vocab_size=100, hidden_size=32, intermediate_size=32, num_hidden_layers=1,
                            num_attention_heads=2, max_position_embeddings=16, projection_dim=32,
                            bos_token_id=0, eos_token_id=1, pad_token_id=1)
    cfg = T.OmDetTurboConfig(
        backbone_config=_swin(["stage2", "stage3", "stage4"]), text_config=clip, image_size=IMAGE,
        apply_layernorm_after_vision_backbone=False,
        text_projection_in_dim=32, text_projection_out_dim=32, task_encoder_hidden_dim=16,
        class_embed_dim=32, encoder_hidden_dim=16,  # != decoder_hidden_dim: task_project exists only then
        vision_features_channels=[16, 16, 16],
        encoder_in_channels=[16, 32, 64], encoder_projection_indices=[2], encoder_attention_heads=2,
        encoder_dim_feedforward=16, encoder_layers=1, num_feature_levels=3, decoder_hidden_dim=16,
        decoder_num_heads=2, decoder_num_layers=1, decoder_dim_feedforward=16, decoder_num_points=2,
        num_queries=8, encoder_dropout=0.0, decoder_dropout=0.0)
    g = torch.Generator().manual_seed(0)
    batch, classes = 2, 3
    inputs = dict(
        _pixels(batch),
        classes_input_ids=torch.randint(1, 100, (batch * classes, 5), generator=g),
        classes_attention_mask=torch.ones(batch * classes, 5, dtype=torch.long),
        tasks_input_ids=torch.randint(1, 100, (batch, 5), generator=g),
        tasks_attention_mask=torch.ones(batch, 5, dtype=torch.long),
        classes_structure=torch.tensor([classes] * batch))
    return T.OmDetTurboForObjectDetection(cfg), inputs


FAMILIES["OmDetTurbo"] = omdet_turbo
