using System.Globalization;

namespace Metering.Cli;

/// <summary>
/// What the CLI prints for people, in the reader's language: table headers, field names and
/// summary lines are written in English in the code and looked up here by that English text.
/// Where the reader prefers Chinese (<see cref="Language"/>) and the table knows the text, the
/// Chinese is printed; otherwise the English, so a label nobody translated yet still reads.
/// Machine outputs (CSV and JSON field names, statements' canonical form) never pass through here.
/// </summary>
internal static class Labels
{
    /// <summary>The label in the reader's language.</summary>
    public static string Of(string english) => Of(english, Language.PrefersChinese);

    /// <summary>
    /// A line with values, keyed by its English composite format (`{0} closed.`); the Chinese
    /// format takes the same placeholders, and values are formatted invariantly.
    /// </summary>
    public static string Format(string englishFormat, params object?[] values) =>
        string.Format(CultureInfo.InvariantCulture, Of(englishFormat), values);

    internal static string Of(string english, bool chinese) => chinese && Chinese.TryGetValue(english, out string? zh) ? zh : english;

    /// <summary>English text to its Chinese, for the commands people read most.</summary>
    internal static readonly IReadOnlyDictionary<string, string> Chinese = new Dictionary<string, string>(StringComparer.Ordinal)
    {
        // Words shared by many tables.
        ["id"] = "编号",
        ["day"] = "日期",
        ["from"] = "起",
        ["to"] = "止",
        ["when"] = "时间",
        ["by"] = "经办人",
        ["records"] = "记录数",
        ["provider"] = "服务机构",
        ["holder"] = "持有方",
        ["name"] = "名称",
        ["code"] = "信用代码",
        ["credit code"] = "统一社会信用代码",
        ["status"] = "状态",
        ["state"] = "状态",
        ["reason"] = "原因",
        ["reasons"] = "理由",
        ["district"] = "所在区",
        ["established"] = "成立日期",
        ["type"] = "类型",
        ["year"] = "年度",
        ["version"] = "版本",
        ["model"] = "型号",
        ["device model"] = "设备型号",
        ["devices"] = "设备数",
        ["site"] = "站点",
        ["job"] = "作业",
        ["stream"] = "数据流",
        ["unit"] = "计费单位",
        ["sha256"] = "SHA-256",
        ["(none)"] = "（无）",

        // settle, settle list.
        ["late records"] = "迟到记录",
        ["fees CNY"] = "费用（元）",
        ["subsidies CNY"] = "补贴（元）",
        ["settled by"] = "结算人",
        ["finished"] = "完成时间（北京时间）",
        ["settlement sha256"] = "结算哈希（SHA-256）",
        ["day records"] = "当日记录",
        ["usage PFLOPS·h"] = "用量（PFLOPS·h）",
        ["subsidies posted CNY"] = "已入账补贴（元）",
        ["statements"] = "结算单",
        ["leaves"] = "叶子数",
        ["root"] = "根",
        ["{0} closed."] = "{0} 已结算关账。",
        ["{0} was already closed; nothing was written. Its settlement, re-verified:"] = "{0} 早已关账，未写入任何内容。其结算经重新核验：",
        ["Merkle roots of {0} as settled, one per provider statement (recompute with `metering audit merkle-root --settled`):"] =
            "{0} 结算时的 Merkle 根，每份服务机构结算单一个（可用 `metering audit merkle-root --settled` 重算）：",
        ["settlement sha256 {0}"] = "结算哈希（SHA-256）{0}",
        ["Statements written to {0}"] = "结算单已写入 {0}",
        ["Nothing to settle: every day through yesterday (Asia/Shanghai) is closed."] = "无需结算：截至昨天（北京时间）的每一天均已关账。",
        ["Settled {0} day(s); every day through yesterday (Asia/Shanghai) is closed."] = "已结算 {0} 天；截至昨天（北京时间）的每一天均已关账。",

        // audit verify, usage, anomalies.
        ["checked"] = "已核验",
        ["chain"] = "哈希链",
        ["head"] = "链头",
        ["intact"] = "完整",
        ["BROKEN at {0} ({1})"] = "在第 {0} 条断裂（{1}）",
        ["device-hours"] = "设备时",
        ["FP16 PFLOPS·h"] = "FP16 算力用量（PFLOPS·h）",
        ["total"] = "合计",
        ["{0} stream(s), {1} records, {2:N1} MB of canonical encoding re-hashed in {3:N2} s ({4:N1} MB/s)"] =
            "{0} 条数据流，{1} 条记录，重新哈希规范编码 {2:N1} MB，用时 {3:N2} 秒（{4:N1} MB/s）",
        ["(only the largest {0:N0} groups are shown; the total covers all)"] = "（仅显示最大的 {0:N0} 组；合计涵盖全部）",
        ["{0} anomaly in {1:N0} records."] = "在 {1:N0} 条记录中发现 {0} 项异常。",
        ["{0} anomalies in {1:N0} records."] = "在 {1:N0} 条记录中发现 {0} 项异常。",

        // registry applications, show.
        ["application"] = "申请",
        ["applicant"] = "申请机构",
        ["batch"] = "批次",
        ["service item"] = "服务项目",
        ["filed"] = "提交时间",
        ["declared PFLOPS"] = "申报算力（PFLOPS）",
        ["verified PFLOPS"] = "核验算力（PFLOPS）",
        ["notice"] = "入库通知",
        ["declared"] = "申报算力",
        ["verified"] = "核验算力",
        ["intermediary"] = "中介机构",
        ["public notice until"] = "公示截止",
        ["admission notice"] = "入库通知书",
        ["awaiting approval"] = "待复核",
        ["proof stream"] = "计量证明数据流",
        ["service content"] = "服务内容",
        ["service standards"] = "服务标准",
        ["stage"] = "环节",
        ["outcome"] = "结果",
        ["material"] = "材料",
        ["document"] = "文件",
        ["FP16 PFLOPS"] = "FP16 算力（PFLOPS）",
        ["price (fen)"] = "单价（分）",
        ["yuan"] = "元",
        ["Materials"] = "申报材料",
        ["Declared capacity"] = "申报算力",
        ["Fee schedule (version 1)"] = "收费标准（第 1 版）",
        ["No applications."] = "没有申请。",
        ["legal form"] = "组织形式",
        ["licence"] = "许可证",
        ["issuer"] = "发证机关",
        ["valid from"] = "有效期起",
        ["valid until"] = "有效期至",
        ["valid today"] = "今日有效",
        ["list"] = "名单",
        ["until"] = "止",
        ["fees"] = "收费标准",
        ["fee schedule"] = "收费标准",
        ["IDC/ISP licences"] = "IDC/ISP 许可证",
        ["Integrity listings"] = "信用名单",
        ["Service items"] = "服务项目",
        ["Applications"] = "申请",

        // voucher holder, contract, voucher, claim, parameters.
        ["contract"] = "合同",
        ["number"] = "合同编号",
        ["item"] = "服务项目",
        ["amount CNY"] = "金额（元）",
        ["fees v"] = "收费标准版本",
        ["start-up"] = "初创企业",
        ["other support CNY"] = "其他支持（元）",
        ["voucher support CNY"] = "训力券支持（元）",
        ["voucher"] = "训力券",
        ["face CNY"] = "面额（元）",
        ["held CNY"] = "冻结（元）",
        ["posted CNY"] = "已入账（元）",
        ["remaining CNY"] = "余额（元）",
        ["claim"] = "申领",
        ["eligible CNY"] = "可补贴费用（元）",
        ["subsidy CNY"] = "补贴（元）",
        ["limited by"] = "限制因素",
        ["hold"] = "冻结",
        ["card-ms"] = "卡毫秒",
        ["price CNY"] = "单价（元）",
        ["fee CNY"] = "费用（元）",
        ["effective from"] = "生效时间",
        ["ratio"] = "补贴比例",
        ["annual cap CNY"] = "年度上限（元）",
        ["stacking"] = "叠加上限",
        ["min rental CNY"] = "最低租用（元）",
        ["payee"] = "收款方",
        ["hold days"] = "冻结天数",
        ["{0}  {1}  ({2}, established {3}, {4})"] = "{0}  {1}（{2}，成立于 {3}，{4}）",

        // key list.
        ["role"] = "角色",
        ["subject"] = "主体",
        ["label"] = "标签",
        ["issued"] = "签发时间",
        ["revoked"] = "吊销",
        ["client cert sha256"] = "客户端证书 SHA-256",

        // clock show.
        ["now:      {0} Asia/Shanghai ({1})"] = "现在：{0} 北京时间（{1}）",
        ["clock:    simulated (sandbox), {0} ahead of real time"] = "时钟：模拟（沙箱），比真实时间快 {0}",
        ["clock:    real time"] = "时钟：真实时间",
    };
}
