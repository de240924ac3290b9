"""Names of the paper outputs (no heavy imports: the Snakefile reads these while it builds the DAG).

Paper and number first: `000_table2_classification` is seed 000's Table 2; figures without a number in the
paper carry `fig_` and what they show.
"""

# seed 000 Tables 2-5 by task kind; distortion and translation (001's restoration tasks) join super-resolution
PERFORMANCE_TABLES = {
    "000_table2_classification": "classification",
    "000_table3_regression": "regression",
    "000_table4_segmentation": "segmentation",
    "000_table5_restoration": "restoration",
}
OTHER_TABLES = ("000_table1_cohorts", "000_table6_cka", "001_table1_compute", "002_table5_ablation",
                "003_lens_summary")
FIGURES = ("001_fig1b_scratch_vs_finetuned", "001_fig2_rpg_vs_distance", "001_fig3_learning_curves",
           "000_fig_cka_heatmaps", "003_lens_heatmap", "003_lens_class_bars", "000_fig_segmentation_overlays")
PAPERS = ("000", "001", "002", "003")
